# shellcheck shell=bash
# Helpers shared by the launchers in launch/ (sourced, not run).
#
# Every command a launcher would run goes through `run_cmd`. With DRY_RUN=1
# (or --dry-run) it prints the command on stdout, one command per line, quoted
# so that the line can be pasted into a shell, and runs nothing. Otherwise it
# echoes the command on stderr with a "+ " prefix and runs it.

# The repository root (the parent of launch/).
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$LAUNCH_DIR")"

# shquote WORD: WORD quoted for a POSIX shell. Words made only of characters
# that are never special are left as they are; anything else is put in single
# quotes, with each ' written as '\''.
shquote() {
  local s="$1"
  if [[ -n "$s" && "$s" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

# shjoin WORD...: the words quoted with shquote and joined by spaces.
shjoin() {
  local out="" w
  for w in "$@"; do
    out+="${out:+ }$(shquote "$w")"
  done
  printf '%s' "$out"
}

is_dry_run() {
  case "${DRY_RUN:-0}" in
    1 | true | yes) return 0 ;;
    0 | false | no | "") return 1 ;;
    *) die "DRY_RUN must be 1 or 0, got '${DRY_RUN}'" ;;
  esac
}

# run_cmd CMD ARG...: print (dry run) or echo and run the command.
run_cmd() {
  if is_dry_run; then
    printf '%s\n' "$(shjoin "$@")"
  else
    printf '+ %s\n' "$(shjoin "$@")" >&2
    "$@"
  fi
}

# note TEXT: a message for the user, on stderr (stdout carries only commands).
note() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

# die MESSAGE: an error that is not about how the script was called.
die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

# usage_error MESSAGE: a bad or missing argument; prints the usage, then the
# error last so that it is what the user sees.
usage_error() {
  usage >&2
  printf '\n%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

# Option parsing. Options are accepted as --name=value and as --name value.
#   split_opt "$1"; shift          sets OPT (the name) and, for --name=value,
#                                  OPT_INLINE=1 and OPTVAL=value.
#   opt_value "$@"; shift "$NSHIFT"  sets OPTVAL from the inline value or the
#                                  next argument (then NSHIFT=1).
#   opt_flag                       fails if a flag got an inline value.
split_opt() {
  OPT="$1"
  OPT_INLINE=0
  OPTVAL=""
  if [[ "$OPT" == --*=* ]]; then
    OPTVAL="${OPT#*=}"
    OPT="${OPT%%=*}"
    OPT_INLINE=1
  fi
}

# shellcheck disable=SC2034 # NSHIFT is read by the sourcing script
opt_value() {
  NSHIFT=0
  if ((OPT_INLINE == 0)); then
    if (($# == 0)) || [[ "$1" == --* ]]; then
      usage_error "option $OPT needs a value"
    fi
    OPTVAL="$1"
    NSHIFT=1
  fi
  [[ -n "$OPTVAL" ]] || usage_error "option $OPT needs a non-empty value"
}

opt_flag() {
  ((OPT_INLINE == 0)) || usage_error "option $OPT takes no value"
}

# require VALUE FLAG VARIABLE [WHAT]: fail with a message naming both ways to
# give a required setting.
require() {
  [[ -n "$1" ]] || usage_error "missing ${4:-setting}: give $2 or set $3"
}

# The jax version pinned in requirements.txt (for jax[tpu] / jax[cuda12]).
pinned_jax_version() {
  sed -n '/^jax==/{s/^jax==\([^[:space:]#;]*\).*/\1/p;q;}' "$REPO_ROOT/requirements.txt"
}
