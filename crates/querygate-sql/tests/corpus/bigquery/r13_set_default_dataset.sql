SET @@dataset_id = 'other';
SELECT * FROM users
