package l7authz

import "errors"

func errorsIs(err, target error) bool { return errors.Is(err, target) }
