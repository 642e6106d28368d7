# Object-level access and roles (all markets).
#
# Every rule is a positive check that must hold; the denial fires when the
# check is not true, so a missing or wrong-typed field denies (docs/POLICIES.md,
# "Writing rules safely on regorus"). Parameters: data/access.json.
package gateway.access

import rego.v1

# Required by package gateway: it refuses to allow anything unless every
# rule package of the bundle says it is loaded.
# (A default with no other definition: the Rvm answers it without running a body.)
default loaded := true

# Scope (package gateway): object-level access and roles judge every request.
default applies := true

# --- the subject -----------------------------------------------------------

subject_ok if {
	is_object(input.subject)
	is_array(input.subject.accounts)
	is_array(input.subject.roles)
}

deny contains {"code": "unauthenticated", "message": "The request carries no valid subject."} if {
	not subject_ok
}

# --- object-level authorisation ----------------------------------------------

# RULES.md Access: "A customer reaches only accounts listed in their token; any
# other account id in path, query or body is denied (broken object-level
# authorisation)."
# An account is owned when it is a string listed in the token's accounts
# (written out below rather than as a function: the Rvm pays for each call).
query_accounts_ok if {
	is_array(input.request.query_accounts)
	every account in input.request.query_accounts {
		is_string(account)
		account in input.subject.accounts
	}
}

query_accounts_ok if input.request.query_accounts == null

body_accounts_ok if {
	is_array(input.body_accounts)
	every account in input.body_accounts {
		is_string(account)
		account in input.subject.accounts
	}
}

body_accounts_ok if input.body_accounts == null

# The usual request first, written out: a string account, arrays of query
# and body accounts, all listed in the token's accounts. It holds only when
# the next definition holds too, and spares the usual request the calls to
# query_accounts_ok and body_accounts_ok.
accounts_ok if {
	accounts := input.subject.accounts
	is_string(input.request.account)
	input.request.account in accounts
	is_array(input.request.query_accounts)
	every account in input.request.query_accounts {
		is_string(account)
		account in accounts
	}
	is_array(input.body_accounts)
	every account in input.body_accounts {
		is_string(account)
		account in accounts
	}
}

# The request's account (path) is either a string listed in the token's
# accounts or null: one definition each.
accounts_ok if {
	is_string(input.request.account)
	input.request.account in input.subject.accounts
	query_accounts_ok
	body_accounts_ok
}

accounts_ok if {
	input.request.account == null
	query_accounts_ok
	body_accounts_ok
}

deny contains {"code": "account_forbidden", "message": "The request names an account that is not yours."} if {
	not accounts_ok
	subject_ok
}

# --- roles -------------------------------------------------------------------

# RULES.md Access: "Roles: client, advisor (read accounts assigned to them),
# compliance (policies, audit, freezes), admin (gateway operation)."
# A role not listed in data/access.json role_tiers grants nothing.
known_roles contains role if {
	some role in input.subject.roles
	is_string(role)
	is_array(data.access.role_tiers[role])
}

role_ok if {
	some role in known_roles
	input.request.tier in data.access.role_tiers[role]
}

deny contains {"code": "unknown_role", "message": "The subject has no role known to the gateway."} if {
	count(known_roles) == 0
	subject_ok
}

deny contains {"code": "role_forbidden", "message": "Your role does not permit this action."} if {
	not role_ok
	subject_ok
	count(known_roles) > 0
}

# RULES.md Access: "Admin and compliance actions need a recent step-up."
step_up contains {
	"acr": data.access.privileged_step_up_acr,
	"reason": "privileged_action",
	"max_age": data.access.privileged_step_up_max_age_s,
} if {
	input.request.tier in data.access.privileged_tiers
}

# --- frozen accounts -----------------------------------------------------------

# A frozen account cannot trade or transfer; reads stay allowed. The tiers
# it blocks are tested in place (input.request.tier in
# data.access.frozen_blocked_tiers): a rule for them costs a rule call.

deny contains {"code": "account_frozen", "message": "The account is frozen."} if {
	input.account.frozen == true
	input.request.tier in data.access.frozen_blocked_tiers
}

deny contains {"code": "account_facts_unavailable", "message": "The account facts are missing or invalid."} if {
	not is_boolean(input.account.frozen)
	input.request.tier in data.access.frozen_blocked_tiers
}

# --- the positive check used by package gateway ------------------------------

# One definition per frozen case (no rule of its own, each rule call costs):
# an account that is not frozen on a tier a freeze blocks (the usual trade
# or transfer first), or a tier a freeze does not block.
ok if {
	input.account.frozen == false
	input.request.tier in data.access.frozen_blocked_tiers
	subject_ok
	accounts_ok
	role_ok
}

ok if {
	not input.request.tier in data.access.frozen_blocked_tiers
	subject_ok
	accounts_ok
	role_ok
}

default obligation := set()
