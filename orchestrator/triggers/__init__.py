"""Jobs that start themselves: schedules (a cron expression in a time zone) and inbound webhooks
(a signed POST to /hooks/<slug>). Both create jobs only through `services.job_submit`, with an
origin of their own and a `max_risk` ceiling on top of their owner's policy."""
