SELECT t FROM ds.users t
