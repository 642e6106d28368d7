"""Face enrolment, verification and liveness for step-up (face_recognition on dlib).

Runs as its own process (``python -m biometrics serve``); the gateway talks to
it with :class:`biometrics.client.BiometricsClient`. This package never
imports the gateway. Importing it is light: the face stack loads only in the
service's worker processes (biometrics.worker) or in ``biometrics.faces.load_engine``.
"""

from biometrics.errors import BiometricError

__all__ = ["BiometricError"]
