SELECT LOCALTIMESTAMP, CURRENT_DATE, current_schema, current_role, user
