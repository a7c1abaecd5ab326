"""`snapfaas bench`: measurements that compare the platform against a baseline in the same run."""
