-- Benchmark query: 2 CTEs, ARRAY_AGG(STRUCT), COUNTIF, 25 CASE WHEN, QUALIFY
WITH recent AS (
  SELECT user_id, order_id, status, region, amount, created_at
  FROM `proj.sales.orders`
  WHERE created_at >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 30 DAY)
),
users AS (
  SELECT id, email, country FROM `proj.crm.users` WHERE active
)
SELECT
  u.id,
  u.country,
  ARRAY_AGG(STRUCT(o.order_id, o.amount, o.status) ORDER BY o.created_at DESC LIMIT 5) AS last_orders,
  COUNTIF(o.status = 'refunded') AS refunds,
  CASE WHEN o.status = 's0' THEN o.amount END AS c0,
  CASE WHEN o.status = 's1' THEN o.amount END AS c1,
  CASE WHEN o.status = 's2' THEN o.amount END AS c2,
  CASE WHEN o.status = 's3' THEN o.amount END AS c3,
  CASE WHEN o.status = 's4' THEN o.amount END AS c4,
  CASE WHEN o.status = 's5' THEN o.amount END AS c5,
  CASE WHEN o.status = 's6' THEN o.amount END AS c6,
  CASE WHEN o.status = 's7' THEN o.amount END AS c7,
  CASE WHEN o.status = 's8' THEN o.amount END AS c8,
  CASE WHEN o.status = 's9' THEN o.amount END AS c9,
  CASE WHEN o.status = 's10' THEN o.amount END AS c10,
  CASE WHEN o.status = 's11' THEN o.amount END AS c11,
  CASE WHEN o.status = 's12' THEN o.amount END AS c12,
  CASE WHEN o.status = 's13' THEN o.amount END AS c13,
  CASE WHEN o.status = 's14' THEN o.amount END AS c14,
  CASE WHEN o.status = 's15' THEN o.amount END AS c15,
  CASE WHEN o.status = 's16' THEN o.amount END AS c16,
  CASE WHEN o.status = 's17' THEN o.amount END AS c17,
  CASE WHEN o.status = 's18' THEN o.amount END AS c18,
  CASE WHEN o.status = 's19' THEN o.amount END AS c19,
  CASE WHEN o.status = 's20' THEN o.amount END AS c20,
  CASE WHEN o.status = 's21' THEN o.amount END AS c21,
  CASE WHEN o.status = 's22' THEN o.amount END AS c22,
  CASE WHEN o.status = 's23' THEN o.amount END AS c23,
  CASE WHEN o.status = 's24' THEN o.amount END AS c24
FROM users u
JOIN recent o ON o.user_id = u.id
GROUP BY u.id, u.country, o.status, o.region, o.amount, o.created_at
QUALIFY ROW_NUMBER() OVER (PARTITION BY u.country ORDER BY SUM(o.amount) DESC) <= 100
