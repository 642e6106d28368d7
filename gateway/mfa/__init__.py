"""Step-up authentication: RFC 9470 challenges, the factors that answer them, step-up tokens.

* levels.py: the acr ladder and which methods reach each level;
* challenges.py: a challenge bound to one pending request, in the shared state store;
* tokens.py: the short-lived step-up token the client retries with;
* totp.py, sms.py: the one-time-code factors; face checks go to the biometrics service;
* service.py: the workflow (issue, answer, enrol) over those parts;
* handlers.py: the ``/auth/mfa/...`` endpoints on the public listener.

See docs/STEP_UP.md.
"""
