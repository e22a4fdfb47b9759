-- idle-supervisor: UIDs the server lists but does not return (run once, after 001-007; running it
-- again is harmless).
--
-- Exchange Online lists a new UID in `UID SEARCH` while `UID FETCH` leaves it out, for minutes
-- or for good (imapclient#441, EmailEngine#53, MailKit#1615). The tenant hands over the mail
-- after such a UID and lets its checkpoint move past it only once the UID is written here, so a
-- restart or a redeploy still knows it: it is asked for again at every catch-up, handed over
-- once the server serves it, and recorded `failed` in processed_emails after
-- [imap] missing_uid_timeout (default 3600 s) if it never comes. A row is removed when its UID
-- has a done row in processed_emails.
--
-- Without this table a tenant keeps the record in its process only (a restart forgets it) and
-- logs once that this migration is missing.

begin;

create table if not exists public.missing_uids (
    company_id  text not null references public.companies (id) on delete cascade,
    folder      text not null,
    uidvalidity bigint not null,
    uid         bigint not null check (uid > 0),
    first_seen  timestamptz not null default now(),
    primary key (company_id, folder, uidvalidity, uid)
);

-- As every other table: Row Level Security on and no policy, so anon and authenticated see
-- nothing; only the service role (the supervisor) reads and writes.
alter table public.missing_uids enable row level security;
revoke all on public.missing_uids from anon, authenticated;
grant select, insert, update, delete on public.missing_uids to service_role;

commit;
