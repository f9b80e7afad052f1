SELECT s.x FROM (SELECT ssn AS x FROM ds.users) AS s
