"""`ravel run`: a lab for one CI job (publish, run a command, snapshot on failure, always
destroy), and its JUnit report. Above `access` (the command gets the app's ssh-config and
inventory), below the CLI."""
