-- agentrun schema, version 2. The PostgreSQL dialect adds the SQL functions the Supabase
-- (REST) backend calls; SQLite has no such backend, so nothing changes here. The file exists
-- so that both dialects share one list of versions.
SELECT 1;
