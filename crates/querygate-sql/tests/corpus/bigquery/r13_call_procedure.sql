CALL ds.cleanup(1, (SELECT MAX(id) FROM ds.users))
