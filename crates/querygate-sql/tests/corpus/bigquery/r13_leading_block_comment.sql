/* x */ DELETE FROM ds.t WHERE true
