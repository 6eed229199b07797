"""Below both the operator CLI (`grants_cli`) and the local host (`grants_local`): what both use. Not deployed."""
