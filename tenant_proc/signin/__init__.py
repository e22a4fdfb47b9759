"""Signing in to the IMAP server: a password, or an OAuth2 access token (XOAUTH2, OAUTHBEARER).

login.py is the login step the session and `check` call; tokens.py caches and refreshes a
tenant's access token; providers/ fetches tokens from Microsoft, Google or a command; storage.py
keeps rotated refresh tokens; errors.py turns what an endpoint or server says into one line for
the operator; login_budget.py bounds logins per hour.
"""
