"""HTTP clients of a company process: an httpx client bounded per whole request (deadline.py) and
the Supabase client made on it (supabase.py)."""
