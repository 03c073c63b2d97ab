"""The platform every tessera service runs on: serving, health, migrations, JSON bodies,
CSRF, logs."""
