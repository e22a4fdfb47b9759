-- idle-supervisor: per-company Message-ID deduplication window (run once, after 001-006;
-- running it again is harmless).
--
--   dedupe_window  seconds; an email whose Message-ID this company's tenant handled that
--                  recently (another UID, another folder) is recorded `duplicate` and not handed
--                  over (Outlook add-ins re-upload mail under a new UID). NULL: the [imap]
--                  dedupe_window of the config (604800 s, 7 days, by default since issue 21;
--                  it was 0 = off before); 0: off for this company.
alter table public.companies add column if not exists dedupe_window double precision
    check (dedupe_window is null or dedupe_window >= 0);
