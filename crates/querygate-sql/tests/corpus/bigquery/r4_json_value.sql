SELECT JSON_VALUE(payload, '$.email') AS e FROM ds.events
