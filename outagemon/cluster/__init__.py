"""Two or more hosts on one PostgreSQL: the leader's lease (`lease.py`), and what a
standby answers from while another host leads (`replica.py`)."""
