#!/bin/sh
# Container entrypoint: `budgetforce serve` with the image's default flags.
#
#   docker run IMAGE                         -> budgetforce serve $BUDGETFORCE_SERVE_ARGS
#   docker run IMAGE --max-num-seqs 8        -> budgetforce serve $BUDGETFORCE_SERVE_ARGS --max-num-seqs 8
#   docker run IMAGE budgetforce bench ...   -> runs that command as given
#
# BUDGETFORCE_SERVE_ARGS holds extra flags (split on whitespace, so no JSON with spaces there),
# e.g. "--tensor-parallel-size 2 --max-model-len 32768". Everything else comes from the
# BUDGETFORCE_* variables `budgetforce serve` reads itself (BUDGETFORCE_MODEL, _API_KEY, ...).
set -eu
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    # shellcheck disable=SC2086  # word splitting of the flag list is intended
    set -- budgetforce serve ${BUDGETFORCE_SERVE_ARGS:-} "$@"
fi
exec "$@"
