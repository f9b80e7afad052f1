-- a column named like its table: BigQuery may mean the column or the whole row, so both are reported
SELECT sales FROM ds.sales
