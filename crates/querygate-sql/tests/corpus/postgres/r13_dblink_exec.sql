SELECT dblink_exec('dbname=x', 'DROP TABLE users')
