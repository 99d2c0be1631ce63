//! TODO(vhost): vhost-user front end
