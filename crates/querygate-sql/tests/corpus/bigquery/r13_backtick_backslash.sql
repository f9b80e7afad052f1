-- BigQuery lets a backslash escape the closing backtick; sqlparser does not: opaque
SELECT `\` , `; DELETE FROM t; --` FROM ds.x
