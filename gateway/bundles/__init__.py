"""Policy bundles changed live, with four eyes (docs/POLICIES.md, "Changing policies: the admin API").

* `files`: the upload envelope, path rules, limits, the bundle's identity (version, SM3 digests);
* `validate`: ``portcullis policy check`` on an uploaded bundle;
* `repository`: the storage interface, the workflow rules and the in-memory repository;
  `postgres`: the shared, durable repository;
* `runtime`: the atomic hot swap (`ActivePolicy`) and the watcher (pub/sub + polling);
* `service`: the workflow (`PolicyAdmin`), audited write-ahead.
"""
