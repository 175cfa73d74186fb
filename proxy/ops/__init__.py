"""What an operator reads and what runs beside requests: metrics, logs, access lines, tasks."""
