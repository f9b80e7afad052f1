SELECT DISTINCT country FROM ds.users GROUP BY country, ssn HAVING COUNT(*) > 1
