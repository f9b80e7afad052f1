SELECT ERROR(ssn) FROM ds.users
