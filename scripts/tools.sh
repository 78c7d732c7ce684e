# shellcheck shell=bash
# Sourced by scripts/deploy, scripts/destroy and scripts/status, from the repository's root: the tools each needs,
# checked before it does anything, with one line per missing tool saying how to get it.

# The project's one virtualenv, the README's (Pulumi.yaml's runtime names it too, so `pulumi up` runs the program
# in it); PYTHON overrides it.
python="${PYTHON:-.venv/bin/python}"

# need TOOL...: pulumi, aws, kubectl or python (the virtualenv); exits 2 after naming every one that is missing.
need() {
  local tool missing=0
  for tool in "$@"; do
    case "${tool}" in
      pulumi) command -v pulumi >/dev/null ||
        { echo "pulumi is not installed: get the Pulumi CLI, https://www.pulumi.com/docs/install/" >&2; missing=1; } ;;
      aws) command -v aws >/dev/null ||
        { echo "aws is not installed (the kubeconfig runs aws eks get-token): get the AWS CLI v2," \
            "https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html" >&2; missing=1; } ;;
      kubectl) command -v kubectl >/dev/null ||
        { echo "kubectl is not installed: get it, https://kubernetes.io/docs/tasks/tools/" >&2; missing=1; } ;;
      python) [ -x "${python}" ] ||
        { echo "no virtualenv at ${python}: python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt" \
            "(README, Quickstart)" >&2; missing=1; } ;;
    esac
  done
  [ "${missing}" = 0 ] || exit 2
}

# need_stack_file STACK: the stack's Pulumi.STACK.yaml beside Pulumi.yaml, or exit 2 naming the stacks there are.
need_stack_file() {
  [ -f "Pulumi.$1.yaml" ] || {
    echo "no Pulumi.$1.yaml: stacks are $(printf '%s\n' Pulumi.*.yaml | sed 's/Pulumi\.\(.*\)\.yaml/\1/' | tr '\n' ' ')" >&2
    exit 2
  }
}
