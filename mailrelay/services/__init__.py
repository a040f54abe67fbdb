"""The twistd services: submission, delivery, bounces, webhooks, cluster, domains."""
