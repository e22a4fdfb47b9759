-- idle-supervisor: more ledger statuses (run once, after 001 and 002; running it again is harmless).
--
--   handling   the handler was called and has not returned yet (or the process died meanwhile):
--              after a crash the email is handed over again as `redelivered`, and the death
--              counts as an attempt (the SQLite ledger has had this mark from the start)
--   expunged   the UID was gone from the mailbox when it was fetched (confirmed with UID SEARCH)
--   duplicate  skipped: the same Message-ID was already handled within the tenant's
--              deduplication window (off by default)
--   replay     an operator asked for another round (`idle-supervisor retry`) of a failed email
alter table public.processed_emails drop constraint if exists processed_emails_status_check;
alter table public.processed_emails add constraint processed_emails_status_check
    check (status in ('processed', 'failed', 'retrying', 'handling', 'expunged', 'duplicate', 'replay'));

-- Message-ID lookups (deduplication, `idle-supervisor failed`) per company.
create index if not exists processed_emails_message_id
    on public.processed_emails (company_id, message_id);
create index if not exists processed_emails_status
    on public.processed_emails (company_id, status);
