-- BigQuery ends a line comment at a carriage return: the DELETE must be seen
SELECT 1; -- cDELETE FROM ds.t WHERE true
