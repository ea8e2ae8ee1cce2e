from tests.fakes.github import github_app_key, github_fake

__all__ = ["github_app_key", "github_fake"]
