SELECT payload->>'email', payload #>> '{a,b}' FROM events
