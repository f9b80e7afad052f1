SELECT id, name FROM ds.users JOIN ds.profiles USING (id)
