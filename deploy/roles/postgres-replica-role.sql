-- The replicas' PostgreSQL role: an unprivileged login with a schema of its own
-- (the forum) as its whole search path; it gets no grant on the auth service's
-- tables, so it can neither read a password hash nor set one. Idempotent; run
-- as the superuser with psql variables role, password and dbname, by the local
-- stack (tessera_stack.servers) and compose (the db-roles service).
SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
ALTER ROLE :"role" NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'password';
CREATE SCHEMA IF NOT EXISTS :"role" AUTHORIZATION :"role";
ALTER ROLE :"role" IN DATABASE :"dbname" SET search_path = :"role";
