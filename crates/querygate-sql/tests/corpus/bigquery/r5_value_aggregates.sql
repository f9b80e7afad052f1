SELECT MAX(ssn), MIN(ssn), STRING_AGG(ssn, ','), APPROX_TOP_COUNT(ssn, 10), ANY_VALUE(ssn) FROM ds.users GROUP BY country
