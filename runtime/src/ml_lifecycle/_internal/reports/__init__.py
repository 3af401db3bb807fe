"""What the runs show people: pictures in the Prefect UI, kept under reports/ in the store."""
