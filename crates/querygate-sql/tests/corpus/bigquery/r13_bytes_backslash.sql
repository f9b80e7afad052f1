-- BigQuery bytes literals take backslash escapes; sqlparser reads them raw: opaque
SELECT b'\' , '; DELETE FROM t; --' FROM ds.x
