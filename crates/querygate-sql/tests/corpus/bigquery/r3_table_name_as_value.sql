SELECT users FROM ds.users
