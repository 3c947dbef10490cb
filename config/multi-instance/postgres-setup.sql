-- One-time PostgreSQL setup for Tributary (run as a superuser, e.g.
-- `sudo -u postgres psql -f postgres-setup.sql`). The collector creates and
-- migrates its own tables; it needs only a database it owns.
CREATE ROLE tributary LOGIN PASSWORD 'change-me';
CREATE DATABASE tributary OWNER tributary;
-- Optional: a read-only role for dashboards or ad-hoc SQL.
-- CREATE ROLE tributary_read LOGIN PASSWORD 'change-me-too';
-- \c tributary
-- GRANT SELECT ON ALL TABLES IN SCHEMA public TO tributary_read;
