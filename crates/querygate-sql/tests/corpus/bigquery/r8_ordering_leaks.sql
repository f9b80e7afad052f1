SELECT name, RANK() OVER (ORDER BY ssn) AS r FROM ds.users ORDER BY ssn
