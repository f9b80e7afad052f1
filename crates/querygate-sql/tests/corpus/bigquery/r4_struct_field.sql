SELECT payload.email, e.payload.phone FROM ds.events e
