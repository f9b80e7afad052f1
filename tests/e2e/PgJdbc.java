// Drives querygate's PostgreSQL front with the PostgreSQL JDBC driver (Debian's
// libpostgresql-jdbc-java): metadata (DatabaseMetaData.getTables and getColumns, as tools
// and ORMs read them), a server-prepared statement run past the driver's prepare
// threshold on a masked column, and a denied statement; prints one JSON-ish line per fact.
import java.sql.*;

public class PgJdbc {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/" + args[1] + "?sslmode=disable&prepareThreshold=1";
        try (Connection c = DriverManager.getConnection(url, "agent", args[2])) {
            DatabaseMetaData md = c.getMetaData();
            StringBuilder tables = new StringBuilder();
            try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) tables.append(rs.getString("TABLE_NAME")).append(",");
            }
            System.out.println("tables=" + tables);
            StringBuilder columns = new StringBuilder();
            try (ResultSet rs = md.getColumns(null, "public", "customers", "%")) {
                while (rs.next()) columns.append(rs.getString("COLUMN_NAME")).append(",");
            }
            System.out.println("columns=" + columns);
            try (PreparedStatement ps = c.prepareStatement("SELECT ssn FROM customers WHERE id = ?")) {
                for (int i = 0; i < 3; i++) {
                    ps.setInt(1, 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        System.out.println("ssn=" + rs.getString(1));
                    }
                }
            }
            try (Statement st = c.createStatement()) {
                st.executeQuery("SELECT * FROM hr.people");
                System.out.println("denied=none");
            } catch (SQLException e) {
                System.out.println("denied=" + e.getSQLState() + " " + e.getMessage().replace('\n', ' '));
            }
        }
    }
}
