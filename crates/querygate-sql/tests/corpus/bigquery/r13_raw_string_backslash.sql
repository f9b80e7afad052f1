-- in a BigQuery raw string a backslash keeps the next quote inside the string: opaque
SELECT r'\' , '; DELETE FROM t; --' FROM ds.x
