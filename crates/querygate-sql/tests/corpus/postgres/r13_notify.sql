NOTIFY chan, 'payload'
