WITH c AS (SELECT ssn AS x FROM ds.users) SELECT x AS not_ssn FROM c
