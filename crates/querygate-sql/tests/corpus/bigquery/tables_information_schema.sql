SELECT job_id, query, user_email FROM `region-us`.INFORMATION_SCHEMA.JOBS WHERE creation_time > '2024-01-01'
