-- idle-supervisor: per-company webhook endpoint (run once, after 001-003; running it again is
-- harmless).
--
--   webhook_url  where tenant_proc.handlers:webhook POSTs this company's mail; NULL: the
--                [handler] url of the config. The signing secret stays in the supervisor's
--                environment (secret_env), never in this table.
alter table public.companies add column if not exists webhook_url text
    check (webhook_url is null or webhook_url ~ '^https?://');
